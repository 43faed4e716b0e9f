"""Parts of bench/serve_mixed.py, one concept per module:

- texts:   mixed-length queries and passages from a seed (and fixed-length extras)
- servers: mlx-serve and Infinity started with their real CLIs, always stopped
- load:    concurrent HTTP clients, sequential latency, answers checked against ST
- library: sentence-transformers in-process, as users call it (and the reference vectors)
- prom:    batch statistics from mlx-serve's /metrics, before and after a load
- rss:     peak and current resident memory of a server's process tree
- report:  the printed tables and issue 12's targets
"""
