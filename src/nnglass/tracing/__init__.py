"""Generic graph machinery: nodes, graphs, proxies, the executor. Knows nothing about nn.Module."""
