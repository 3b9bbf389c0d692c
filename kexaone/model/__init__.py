"""kexaone.model"""
