-- name: resolve_sae
-- kind: macro
-- answers: Which SAE an analysis is about: the SAE id given, or the store's default SAE when it is NULL.
-- inputs: settings
-- params: sae
-- param sae: an SAE id (saes.sae_id), or NULL for the store's default SAE
-- notes: the default is settings.value where key = 'default_sae_id', cast to INTEGER. With
--   sae NULL and no such setting the macro raises an error instead of silently matching nothing.
--   The columns are qualified (settings.key) so that a calling macro may have a parameter
--   named key or value.
CREATE OR REPLACE MACRO resolve_sae(sae) AS
    coalesce(
        CAST(sae AS INTEGER),
        (SELECT CAST(settings.value AS INTEGER) FROM settings WHERE settings.key = 'default_sae_id'),
        error('no SAE given and the store has no default SAE (settings key default_sae_id)')
    );
