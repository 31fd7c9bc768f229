"""A toy text-to-video world where the safety effect of steering can be measured: world, judge, model, training
and evaluation.
"""
