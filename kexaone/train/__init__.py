"""kexaone.train"""
