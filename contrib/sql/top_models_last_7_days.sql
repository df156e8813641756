-- The ten models that cost the most in the last 7 days of data.
--
-- "Last 7 days" ends at the newest hour in the store, so the query answers
-- the same on every database and on a copy of old data. For a window that
-- ends now, compare hour with your database's clock instead:
--   SQLite:     hour >= unixepoch('now') - 7 * 86400
--   PostgreSQL: hour >= extract(epoch FROM now()) - 7 * 86400
SELECT
    model,
    SUM(energy_kwh) AS energy_kwh,
    SUM(energy_cost) AS energy_cost,
    SUM(capacity_cost) AS capacity_cost,
    SUM(energy_cost) + SUM(capacity_cost) AS cost,
    SUM(CASE WHEN bucket = 'keepwarm' THEN energy_kwh ELSE 0.0 END) AS keepwarm_kwh,
    SUM(carbon_kg) AS carbon_kg,
    SUM(unpriced) AS unpriced_rows
FROM v_usage
WHERE model IS NOT NULL
  AND hour > (SELECT MAX(hour) FROM v_usage) - 7 * 86400
GROUP BY model
ORDER BY cost DESC NULLS LAST, model
LIMIT 10;
