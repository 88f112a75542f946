"""cortexflow.training"""
