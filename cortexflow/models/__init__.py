"""cortexflow.models"""
