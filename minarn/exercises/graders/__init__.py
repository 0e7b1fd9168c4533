"""The graders, one module per lesson (``lessonNN.py``); each registers its exercises with ``grading.exercise``."""
