"""cortexflow.preprocess"""
