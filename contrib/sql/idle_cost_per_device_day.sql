-- What each device cost per day while nothing ran on it (its idle baseline),
-- and which share of the device's energy that was.
SELECT
    day,
    host,
    device_uid,
    device_name,
    energy_kwh AS idle_kwh,
    cost AS idle_cost,
    share_of_device_energy,
    device_cost,
    unpriced_rows
FROM v_idle_keepwarm_cost
WHERE bucket = 'idle'
ORDER BY day, idle_cost DESC NULLS LAST, host, device_uid;
