"""Generic graph machinery: nodes, graphs, proxies, the recorder and the interpreter. Knows nothing about nn.Module."""
