"""Photo files: safe decoding, Intervention-compatible thumbnail geometry, resampling, EXIF."""
