"""`tensorpress batch`: every model × recipe of a YAML matrix, resumable and shardable, with gates and a summary."""
