-- Cost per 1000 requests per model, two ways.
--
-- all_in: everything the model was charged (its calls, the overhead between
-- calls and keeping its device warm) over its requests: what a request
-- really costs to serve.
-- calls_only: the energy and capacity of the calls themselves: what a
-- request would cost with no idle time around it.
-- A request is the calls that share a request_id (a call without one is its
-- own request), counted once per model it called.
WITH usage AS (
    SELECT model, SUM(energy_cost) + SUM(capacity_cost) AS cost,
        SUM(energy_kwh) AS energy_kwh, SUM(unpriced) AS unpriced_rows
    FROM v_usage
    WHERE model IS NOT NULL
    GROUP BY model
), req AS (
    SELECT model, COUNT(*) AS requests, CAST(SUM(items) AS BIGINT) AS items,
        SUM(cost) AS calls_cost, COUNT(*) - COUNT(cost) AS unpriced_requests
    FROM v_request_cost
    GROUP BY model
)
SELECT
    r.model,
    r.requests,
    r.items,
    1000 * u.cost / r.requests AS all_in_cost_per_1k,
    1000 * r.calls_cost / r.requests AS calls_only_cost_per_1k,
    1000 * u.energy_kwh / r.requests AS kwh_per_1k,
    u.unpriced_rows,
    r.unpriced_requests
FROM req r
JOIN usage u ON u.model = r.model
ORDER BY all_in_cost_per_1k DESC NULLS LAST, r.model;
