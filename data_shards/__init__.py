"""megastride.data_shards"""
