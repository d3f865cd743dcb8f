"""Ray-orchestrated data prep: source videos -> sync-exact clips -> WebDataset shards.

    python -m data_prep --input videos/ --output shards/ --config configs/greatesthits.yaml
    ray job submit --address http://HEAD:8265 --working-dir . -- python -m data_prep --input ... --output ...

Imports from svgen only the config and the shard schema (docs/design.md, "Layers and the import direction").
"""
