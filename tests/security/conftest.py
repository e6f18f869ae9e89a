"""Key pairs for the security tests, generated once per test session."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.security.support import KeyPair, public_pem


@pytest.fixture(scope="session")
def rsa_key() -> KeyPair:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return KeyPair(key, public_pem(key.public_key()))


@pytest.fixture(scope="session")
def other_rsa_key() -> KeyPair:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return KeyPair(key, public_pem(key.public_key()))


@pytest.fixture(scope="session")
def ec_key() -> KeyPair:
    key = ec.generate_private_key(ec.SECP256R1())
    return KeyPair(key, public_pem(key.public_key()))
