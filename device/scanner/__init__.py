"""Frame sources, QR decoders and payload parsing: from light to a candidate code."""
