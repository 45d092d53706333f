"""lenshpc.simulate"""
