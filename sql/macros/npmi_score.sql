-- name: npmi_score
-- kind: macro
-- answers: What is the normalised pointwise mutual information of two latents, from their document counts?
-- inputs: none
-- params: n_both, n_i, n_j, n_docs
-- param n_both: documents where both latents fired (at least 1)
-- param n_i: documents where the first latent fired
-- param n_j: documents where the second latent fired
-- param n_docs: documents counted (N)
-- notes: With p(i) = n_i / N and p(i, j) = n_both / N, npmi = ln(p(i, j) / (p(i) p(j))) /
--   -ln p(i, j), computed as (ln n_both + ln N - ln n_i - ln n_j) / (ln N - ln n_both) and
--   clamped to [-1, 1] against rounding. When n_both = N the quotient is 0 / 0 and npmi is
--   defined as 1, so the result is never NaN or infinite. The one formula npmi and
--   npmi_targets share.
CREATE OR REPLACE MACRO npmi_score(n_both, n_i, n_j, n_docs) AS
    CASE WHEN n_both >= n_docs THEN 1.0
        ELSE greatest(-1.0, least(1.0,
            (ln(n_both) + ln(n_docs) - ln(n_i) - ln(n_j)) / (ln(n_docs) - ln(n_both))
        )) END;
