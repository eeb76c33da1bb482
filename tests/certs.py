"""Test certificates made with the openssl command: a CA, server and client certificates."""
import os
import subprocess

EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


def _run(openssl, *args, cwd):
    subprocess.run([openssl, *args], cwd=cwd, check=True, capture_output=True)


class CA:
    def __init__(self, openssl, directory, name="ca"):
        self.openssl, self.dir, self.name = openssl, str(directory), name
        os.makedirs(self.dir, exist_ok=True)
        self.cert = os.path.join(self.dir, f"{name}.pem")
        self.key = os.path.join(self.dir, f"{name}.key")
        _run(openssl, "req", "-x509", *EC, "-keyout", self.key, "-out", self.cert, "-days", "2",
             "-subj", f"/CN=hoofhearted test {name}",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             cwd=self.dir)

    def issue(self, name, san, usage="serverAuth"):
        """(cert path, key path) of a leaf certificate for ``san`` ('IP:127.0.0.1,DNS:localhost')."""
        key = os.path.join(self.dir, f"{name}.key")
        csr = os.path.join(self.dir, f"{name}.csr")
        cert = os.path.join(self.dir, f"{name}.pem")
        ext = os.path.join(self.dir, f"{name}.ext")
        with open(ext, "w") as f:
            f.write(f"basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                    f"extendedKeyUsage={usage}\nsubjectAltName={san}\n"
                    "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n")
        _run(self.openssl, "req", *EC, "-keyout", key, "-out", csr, "-subj", f"/CN={name}", cwd=self.dir)
        _run(self.openssl, "x509", "-req", "-in", csr, "-CA", self.cert, "-CAkey", self.key,
             "-CAcreateserial", "-out", cert, "-days", "2", "-extfile", ext, cwd=self.dir)
        return cert, key
