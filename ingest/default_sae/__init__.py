"""The SAE that ships with saedb, in SAELens format (cfg.json + sae_weights.safetensors).

How it was made is in ``recipe.json`` beside it and in the README ("The default SAE").
"""
