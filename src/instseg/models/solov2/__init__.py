"""SOLOv2: grid cells predict a class and a dynamic mask kernel; Matrix NMS."""
