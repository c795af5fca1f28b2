"""The native networks rebuilt as ONNX graphs from their own weights and run by onnxruntime:
dlib's face-encoding ResNet (resnet.py) and libfacedetection's YuNet (yunet_onnx.py), on the
small graph builder both use (onnxgraph.py). Each is checked against the native code when first
built, and not used if the two ever differ."""
