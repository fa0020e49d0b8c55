"""Remote execution: the JSON wire format, the client backend, request and status schemas."""
