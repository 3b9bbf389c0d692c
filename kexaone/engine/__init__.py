"""kexaone.engine"""
