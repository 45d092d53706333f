"""lenshpc.train"""
