"""lenshpc.evaluate"""
