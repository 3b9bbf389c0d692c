"""kexaone.data"""
