-- name: normal_sf
-- kind: macro
-- answers: The upper tail probability P(Z > z) of a standard normal variable Z (1 - CDF), in plain SQL.
-- inputs: none
-- params: z
-- param z: a z-score
-- notes: DuckDB 2.0 has no normal CDF, erf or erfc built in. This computes
--   normal_sf(z) = erfc(z / sqrt(2)) / 2 with the Chebyshev fit for erfc of Press et al.,
--   Numerical Recipes, 2nd ed., section 6.2 ("erfcc"), whose relative error is below 1.2e-7
--   for every argument, so tiny p-values keep their precision (not only ~1e-7 absolute). It
--   underflows to 0 beyond z of about 38. A two-sided p-value is 2 * normal_sf(abs(z)).
CREATE OR REPLACE MACRO normal_sf(z) AS
    CASE WHEN z >= 0 THEN 0.5 ELSE -0.5 END
    * (1.0 / (1.0 + 0.5 * abs(z) / sqrt(2.0)))
    * exp(
        -(z * z) / 2.0 - 1.26551223
        + (1.0 / (1.0 + 0.5 * abs(z) / sqrt(2.0))) * (1.00002368
        + (1.0 / (1.0 + 0.5 * abs(z) / sqrt(2.0))) * (0.37409196
        + (1.0 / (1.0 + 0.5 * abs(z) / sqrt(2.0))) * (0.09678418
        + (1.0 / (1.0 + 0.5 * abs(z) / sqrt(2.0))) * (-0.18628806
        + (1.0 / (1.0 + 0.5 * abs(z) / sqrt(2.0))) * (0.27886807
        + (1.0 / (1.0 + 0.5 * abs(z) / sqrt(2.0))) * (-1.13520398
        + (1.0 / (1.0 + 0.5 * abs(z) / sqrt(2.0))) * (1.48851587
        + (1.0 / (1.0 + 0.5 * abs(z) / sqrt(2.0))) * (-0.82215223
        + (1.0 / (1.0 + 0.5 * abs(z) / sqrt(2.0))) * 0.17087277))))))))
    )
    + CASE WHEN z >= 0 THEN 0.0 ELSE 1.0 END;
