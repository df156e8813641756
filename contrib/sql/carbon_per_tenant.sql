-- Carbon per tenant per month, with the grid intensity it implies
-- (gCO2e per kWh of device energy, PUE included in the carbon).
SELECT
    month,
    tenant,
    energy_kwh,
    carbon_kg,
    1000 * carbon_kg / NULLIF(energy_kwh, 0) AS g_per_kwh,
    unpriced_rows
FROM v_cost_by_tenant_month
ORDER BY month, carbon_kg DESC NULLS LAST, tenant NULLS LAST;
