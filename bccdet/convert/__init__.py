"""Dataset conversion into the YOLO detect / segment / classify layouts (see docs/data.md)."""
