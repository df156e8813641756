"""Holds the ``sitecustomize`` that ``infermeter exec`` puts on PYTHONPATH.

This folder itself goes on PYTHONPATH, so Python imports its
``sitecustomize.py`` at start-up; it is a package only so that the wheel
ships it.
"""
