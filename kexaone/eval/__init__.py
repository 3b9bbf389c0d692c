"""kexaone.eval"""
