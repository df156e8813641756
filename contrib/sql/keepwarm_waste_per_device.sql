-- Keep-warm waste per device: what holding a model on a device without using
-- it cost (the extra draw of a held GPU context above the bare idle, and the
-- device time that went with it), and which model held it. Releasing an
-- idle model saves about this much.
WITH device AS (
    SELECT host, device_uid, SUM(energy_kwh) AS device_kwh
    FROM v_usage
    GROUP BY host, device_uid
)
SELECT
    u.host,
    u.device_uid,
    u.device_name,
    u.model,
    SUM(u.energy_kwh) AS keepwarm_kwh,
    SUM(u.energy_cost) + SUM(u.capacity_cost) AS keepwarm_cost,
    SUM(u.energy_kwh) / NULLIF(MAX(d.device_kwh), 0) AS share_of_device_energy,
    SUM(u.carbon_kg) AS carbon_kg,
    SUM(u.unpriced) AS unpriced_rows
FROM v_usage u
JOIN device d ON d.host = u.host AND d.device_uid = u.device_uid
WHERE u.bucket = 'keepwarm'
GROUP BY u.host, u.device_uid, u.device_name, u.model
ORDER BY keepwarm_cost DESC NULLS LAST, u.host, u.device_uid, u.model NULLS LAST;
