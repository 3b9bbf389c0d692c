"""kexaone.tokenizer"""
