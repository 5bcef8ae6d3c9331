"""Object detection as a Task: CenterNet-style heads, mAP, matched-detection parity gates."""
