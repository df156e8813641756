-- Monthly bill per tenant, with the idle and unattributed cost spread by usage.
--
-- A tenant pays for the energy and capacity its models used or kept warm
-- (buckets active and keepwarm), plus a part of the month's shared cost (the
-- idle baseline and the work no process explains: buckets idle and other) in
-- proportion to its own energy. Work of processes without a tenant is billed
-- to '(untenanted)' and takes its part of the shared cost too.
-- NULL stays NULL: a bill is NULL when a figure it sums is wholly unknown;
-- unpriced_rows says how many hourly rows lacked a price.
WITH direct AS (
    SELECT month,
        COALESCE(tenant, '(untenanted)') AS tenant,
        SUM(energy_kwh) AS energy_kwh,
        SUM(energy_cost) + SUM(capacity_cost) AS direct_cost,
        SUM(unpriced) AS unpriced_rows
    FROM v_usage
    WHERE bucket IN ('active', 'keepwarm')
    GROUP BY month, COALESCE(tenant, '(untenanted)')
), shared AS (
    SELECT month,
        SUM(energy_cost) + SUM(capacity_cost) AS shared_cost,
        SUM(unpriced) AS unpriced_rows
    FROM v_usage
    WHERE bucket IN ('idle', 'other')
    GROUP BY month
), used AS (
    SELECT month, SUM(energy_kwh) AS energy_kwh FROM direct GROUP BY month
)
SELECT
    d.month,
    d.tenant,
    d.energy_kwh,
    d.energy_kwh / NULLIF(u.energy_kwh, 0) AS usage_share,
    d.direct_cost,
    CASE WHEN s.month IS NULL THEN 0.0 ELSE s.shared_cost * d.energy_kwh / NULLIF(u.energy_kwh, 0) END
        AS shared_cost,
    d.direct_cost
        + CASE WHEN s.month IS NULL THEN 0.0 ELSE s.shared_cost * d.energy_kwh / NULLIF(u.energy_kwh, 0) END
        AS bill,
    d.unpriced_rows + COALESCE(s.unpriced_rows, 0) AS unpriced_rows
FROM direct d
JOIN used u ON u.month = d.month
LEFT JOIN shared s ON s.month = d.month
ORDER BY d.month, bill DESC NULLS LAST, d.tenant;
