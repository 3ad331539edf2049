-- migration: 0008_sae_provenance
-- what: where each SAE came from: the on-disk format it was read in (saelens, sparsify,
--       gemmascope, gemmascope2, goodfire, llamascope, dictionary_learning) and whether it
--       was added with --force, i.e. with a reader model whose name differs from the one the
--       SAE was trained on.
-- notes: SAEs registered before this migration were read as SAELens directories and were
--        checked against their reader, hence the defaults. weights_sha256 (0001) is the
--        sha256 of the format's weights file; ingest reloads the SAE in `format` and refuses
--        weights whose hash changed. reader_model and hook_name (0001) are what the SAE says it
--        reads (or what `saedb sae add --model-name/--hook` stated for formats that do not say).

ALTER TABLE saes ADD COLUMN format VARCHAR DEFAULT 'saelens';
ALTER TABLE saes ADD COLUMN force_reader BOOLEAN DEFAULT false;

COMMENT ON COLUMN saes.format IS 'on-disk format the SAE was read in (saedb sae add --format)';
COMMENT ON COLUMN saes.force_reader IS
    'true when added with --force: ingest accepts a reader whose model name differs';
