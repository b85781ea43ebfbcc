"""The request contract: the pydantic models that publish it and the decoders that honour it."""
