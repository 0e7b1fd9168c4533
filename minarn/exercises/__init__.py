"""Exercises: the lessons' functions with their bodies left out, and graders that say what is right and what is not.

For a student::

    python -m minarn.exercises new my_exercises        # one file per lesson, e.g. 02_im2col_conv.py
    # fill in the bodies (each raises NotImplementedError until then); the docstrings give shapes and math
    python -m minarn.exercises check my_exercises      # one line per function: passed / FAILED / not implemented
    python -m minarn.exercises check my_exercises/03_backward_gradcheck.py   # one file

For a teacher: hand out the folder that ``new`` writes; grade a student's folder with ``check`` (exit status 0
only when every function passes; the output is one line per function, a failure says what was expected, what
came and the smallest input that shows it). ``check --reference`` grades the lessons' own solutions.

Each exercise function has the name and signature of a top-level function of its lesson
(``lessons/NN_name.py``), which is its reference solution. The graders (``graders/lessonNN.py``) compare a
student's function with minarn's own layers, with float64 numeric gradients, and with the properties the
lesson teaches; ``grading`` holds what they are built from.
"""
