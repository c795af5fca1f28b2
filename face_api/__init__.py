"""CPU-only face encoding service (dlib HOG + 5-point landmarks + ResNet 128-d encodings).

`face_api.engine` is usable in-process (embedded mode); `face_api.app:app` is the HTTP service.
"""
