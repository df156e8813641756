"""Recommend: a consumer of the store, reading stored calls and windows, building the
statistics the recommender plugins need, running them and storing what they say.
Grouped because the recommender plugins see only what this package builds."""
