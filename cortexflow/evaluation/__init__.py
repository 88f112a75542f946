"""cortexflow.evaluation"""
