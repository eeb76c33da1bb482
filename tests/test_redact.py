"""Command-line redaction on real-looking command lines."""
import pytest

from exporter.redact import redact_args, redact_cmdline, secret_key

AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
HEX_KEY = "3f2a9c4b8e1d7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e"
GH_TOKEN = "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLXRoYXQtaXMtbG9uZw"
B64_KEY = "q8Zr3Nw0Kx7Vb2Lm5Pt9Hc4Jd6Fs1Gy8Ua3Eo0Wi"

# (argv, expected redacted argv, secrets that must not survive)
CASES = [
    (["postgres", "-D", "/var/lib/postgresql/15/main"],
     ["postgres", "-D", "/var/lib/postgresql/15/main"], []),
    (["mysqld", "--user=mysql", "--password=Sup3rS3cret!", "--port=3306"],
     ["mysqld", "--user=mysql", "--password=***", "--port=3306"], ["Sup3rS3cret!"]),
    (["mysql", "-u", "root", "-phunter2", "shop"],
     ["mysql", "-u", "root", "-p***", "shop"], ["hunter2"]),
    (["/usr/bin/python3", "worker.py", "--token", "tok-81be77", "--verbose"],
     ["/usr/bin/python3", "worker.py", "--token", "***", "--verbose"], ["tok-81be77"]),
    (["env", "PGPASSWORD=pa55w0rd", "psql", "-h", "db"],
     ["env", "PGPASSWORD=***", "psql", "-h", "db"], ["pa55w0rd"]),
    (["psql", "host=db.internal port=5432 user=app password=Qx7!mz dbname=orders"],
     ["psql", "host=db.internal port=5432 user=app password=*** dbname=orders"], ["Qx7!mz"]),
    (["git", "clone", "https://alice:s3cr3tpass@git.example.com/team/repo.git"],
     ["git", "clone", "https://***@git.example.com/team/repo.git"], ["alice:s3cr3tpass", "s3cr3tpass"]),
    (["git", "push", f"https://{GH_TOKEN}@github.com/org/repo.git"],
     ["git", "push", "https://***@github.com/org/repo.git"], [GH_TOKEN]),
    (["redis-server", "--requirepass", "r3disPW", "--port", "6379"],
     ["redis-server", "--requirepass", "***", "--port", "6379"], ["r3disPW"]),
    (["redis-cli", "-a", "r3disPW", "ping"],
     ["redis-cli", "-a", "***", "ping"], ["r3disPW"]),
    (["sshpass", "-p", "rootpw", "ssh", "backup@nas"],
     ["sshpass", "-p", "***", "ssh", "backup@nas"], ["rootpw"]),
    (["curl", "-u", "bob:bobspw", "-H", "Authorization: Bearer abc.def.ghi", "https://api.example.com/v1/items"],
     ["curl", "-u", "bob:***", "-H", "Authorization: ***", "https://api.example.com/v1/items"],
     ["bobspw", "abc.def.ghi"]),
    (["curl", "-H", "X-Api-Key: k-5551", "https://api.example.com/x?api_key=k-5552&page=2"],
     ["curl", "-H", "X-Api-Key: ***", "https://api.example.com/x?api_key=***&page=2"], ["k-5551", "k-5552"]),
    (["java", "-Xmx2g", "-Djavax.net.ssl.keyStorePassword=changeit", "-jar", "/opt/app/app.jar"],
     ["java", "-Xmx2g", "-Djavax.net.ssl.keyStorePassword=***", "-jar", "/opt/app/app.jar"], ["changeit"]),
    (["aws-sync", f"AWS_SECRET_ACCESS_KEY={AWS_SECRET}", "AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE"],
     ["aws-sync", "AWS_SECRET_ACCESS_KEY=***", "AWS_ACCESS_KEY_ID=***"], [AWS_SECRET, "AKIAIOSFODNN7EXAMPLE"]),
    (["node", "server.js", "--port=3000", "--api-key", "live_8f1b"],
     ["node", "server.js", "--port=3000", "--api-key", "***"], ["live_8f1b"]),
    (["./app", "--client-secret=cs_942", "--auth-token=at_17", "--apikey=ak_3"],
     ["./app", "--client-secret=***", "--auth-token=***", "--apikey=***"], ["cs_942", "at_17", "ak_3"]),
    (["helm", "upgrade", "web", "./chart", "--set", "db.credentials.password=helmpw1"],
     ["helm", "upgrade", "web", "./chart", "--set", "db.credentials.password=***"], ["helmpw1"]),
    (["docker", "run", "-e", "MYSQL_ROOT_PASSWORD=dockpw", "mysql:8"],
     ["docker", "run", "-e", "MYSQL_ROOT_PASSWORD=***", "mysql:8"], ["dockpw"]),
    (["worker", "--backend", "mongodb+srv://svc:mongopw@cluster0.example.net/db?retryWrites=true"],
     ["worker", "--backend", "mongodb+srv://***@cluster0.example.net/db?retryWrites=true"], ["mongopw"]),
    (["agent", "--id", HEX_KEY], ["agent", "--id", "***"], [HEX_KEY]),
    (["agent", f"--config-blob={B64_KEY}"], ["agent", "--config-blob=***"], [B64_KEY]),
    (["client", "--header", JWT], ["client", "--header", "***"], [JWT]),
    (["slack-bot", "--connect", "xoxb-1234567890-abcdefghij"], ["slack-bot", "--connect", "***"],
     ["xoxb-1234567890-abcdefghij"]),
    (["odbc", "Driver={ODBC 18};Server=sql1;Uid=sa;Pwd=odbcpw;"],
     ["odbc", "Driver={ODBC 18};Server=sql1;Uid=sa;Pwd=***;"], ["odbcpw"]),
    (["curl", "-u", "--password", "pw22"], ["curl", "-u", "--password", "***"], ["pw22"]),
    (["app", "db.credentials.password: 222222"], ["app", "db.credentials.password: ***"], ["222222"]),
    (["runner", "--env", '{"HOME": "/root", "GITHUB_TOKEN": "gt_55"}'],
     ["runner", "--env", '{"HOME": "/root", "GITHUB_TOKEN": "***"}'], ["gt_55"]),
    # benign command lines stay readable
    (["/usr/lib/jvm/java-17-openjdk-amd64/bin/java", "-XX:+UseG1GC", "org.springframework.boot.loader.JarLauncher"],
     ["/usr/lib/jvm/java-17-openjdk-amd64/bin/java", "-XX:+UseG1GC", "org.springframework.boot.loader.JarLauncher"],
     []),
    (["/usr/sbin/nginx", "-g", "daemon on; master_process on;"],
     ["/usr/sbin/nginx", "-g", "daemon on; master_process on;"], []),
    (["python3", "/home/alice/Projects/Thing2/build/Release/bin/train.py", "--epochs=30", "--keyboard=us"],
     ["python3", "/home/alice/Projects/Thing2/build/Release/bin/train.py", "--epochs=30", "--keyboard=us"], []),
]


@pytest.mark.parametrize("argv,expected,secrets", CASES, ids=[c[0][0] + str(i) for i, c in enumerate(CASES)])
def test_redact_table(argv, expected, secrets):
    out = redact_args(argv)
    assert out == expected
    line = redact_cmdline(argv, 10_000)
    for s in secrets:
        assert s not in line


def test_cut_after_redaction_never_leaks_a_partial_key():
    # cut inside the key: a cut-first-then-redact would leave 20 hex chars that no longer look like a key
    argv = ["agent", "--id", HEX_KEY]
    for n in range(1, 60):
        line = redact_cmdline(argv, n)
        assert len(line) <= n
        assert HEX_KEY[:12] not in line


def test_cmdline_is_cut_to_length():
    argv = ["python3", "-c", "x" * 500]
    assert redact_cmdline(argv, 200) == ("python3 -c " + "x" * 500)[:200]


@pytest.mark.parametrize("key,secret", [
    ("--password", True), ("PGPASSWORD", True), ("MYSQL_PWD", True), ("--db-pass", True),
    ("clientSecret", True), ("--access-key", True), ("X-Api-Key", True), ("credentials_file", True),
    ("--port", False), ("--user", False), ("--keyboard", False), ("HOME", False), ("--monkeypatch", False),
])
def test_secret_key_words(key, secret):
    assert secret_key(key) is secret


# -- the rule table: a row per form (issue 15) ------------------------------------------------

STRIPE = "sk_live_" + "4eC39HqLyjWDarjtT1zdp7dc"
RULE_ROWS = [
    # (rule, argv, expected)
    ("url-userinfo", ["git", "clone", "https://bob:pa/ss?wd@git.example.com/r.git"],
     ["git", "clone", "https://***@git.example.com/r.git"]),
    ("url-userinfo", ["rsync", "ftp://anon:a/b@ftp.example.org/pub"], ["rsync", "ftp://***@ftp.example.org/pub"]),
    ("url-userinfo", ["git", "push", "https://oauth2token@gitlab.example.com/g/r.git"],
     ["git", "push", "https://***@gitlab.example.com/g/r.git"]),
    ("option-pair", ["app", "--password:Hunter22"], ["app", "--password:***"]),
    ("option-pair", ["app", "--user=admin:Hunter22"], ["app", "--user=admin:***"]),
    ("option-pair", ["app", "--user=admin%Hunter22"], ["app", "--user=admin%***"]),
    ("header", ["curl", "-H", "Authorization: Basic YWxhZGRpbjpvcGVuc2VzYW1l"], ["curl", "-H", "Authorization: ***"]),
    ("inner-pair", ["mount", "-t", "cifs", "-o", "username=u,password=Hunter22,vers=3.0", "//nas/x", "/mnt"],
     ["mount", "-t", "cifs", "-o", "username=u,password=***,vers=3.0", "//nas/x", "/mnt"]),
    ("inner-pair", ["msbuild", "/p:Password=Hunter22"], ["msbuild", "/p:Password=***"]),
    ("inner-pair", ["msbuild", "/p:Configuration=Release;DbPassword=Hunter22"],
     ["msbuild", "/p:Configuration=Release;DbPassword=***"]),
    ("json-pair", ["app", '{"client_secret": "Hunter22"}'], ["app", '{"client_secret": "***"}']),
    ("user-percent", ["smbclient", "//nas/share", "-U", "alice%Hunter22"],
     ["smbclient", "//nas/share", "-U", "alice%***"]),
    ("user-percent", ["smbclient", "//nas/share", "-Ualice%Hunter22"], ["smbclient", "//nas/share", "-Ualice%***"]),
    ("user-percent", ["app", "alice%Hunter22"], ["app", "alice%***"]),
    ("token-format", ["pay", STRIPE], ["pay", "***"]),
    ("token-format", ["pay", "rk_test_" + "51Habcdefghij0123"], ["pay", "***"]),
    ("token-format", ["pay", "whsec_" + "abcdefghij0123456789"], ["pay", "***"]),
    ("token-format", ["vault", "login", "hvs." + "CAESIJlU5mQy0J2kq3xXbG1vY2tlZA"], ["vault", "login", "***"]),
    ("token-format", ["vault", "login", "s." + "Qf1s5zigZ4LX6vTQiyYW3Idt"], ["vault", "login", "***"]),
    ("token-format", ["npm", "publish", "npm_" + "a" * 18 + "B" * 18], ["npm", "publish", "***"]),
    ("token-format", ["glab", "glpat-" + "xxxxxxxxxxxxxxxxxxxx"], ["glab", "***"]),
    ("token-format", ["glab", "gldt-" + "abcdefghijklmnopqrstu"], ["glab", "***"]),
    ("token-format", ["runner", "GR1348941" + "abcdefghijklmnopqrstu"], ["runner", "***"]),
    ("token-format", ["gh", "github_pat_" + "11ABCDEFG0abcdefghijkl_mnopqrstuvwxyz"], ["gh", "***"]),
    ("token-format", ["gh", "gho_" + "abcdefghijklmnopqrstuvwxyz0123"], ["gh", "***"]),
    ("token-format", ["bot", "xapp-1-" + "A0123456789-abcdef"], ["bot", "***"]),
    ("token-format", ["bot", "xoxp-" + "1234567890-abcdefg"], ["bot", "***"]),
    ("long-hex", ["agent", "--id", HEX_KEY], ["agent", "--id", "***"]),
    ("random-base64", ["agent", B64_KEY], ["agent", "***"]),
]

FLAG_ROWS = [
    # short options that usually carry a secret
    (["app", "-p", "Hunter22"], ["app", "-p", "***"]),
    (["app", "-pHunter22"], ["app", "-p***"]),
    (["app", "-P", "Hunter22"], ["app", "-P", "***"]),
    (["app", "-w", "Hunter22"], ["app", "-w", "***"]),
    (["app", "-k", "Hunter22"], ["app", "-k", "***"]),
    (["mysql", "-uroot:Hunter22"], ["mysql", "-uroot:***"]),
    (["mysql", "-pabc"], ["mysql", "-p***"]),
    (["curl", "-u", "bob:Hunter22", "-k", "https://x.example"], ["curl", "-u", "bob:***", "-k", "https://x.example"]),
    (["curl", "-ubob:Hunter22", "https://x.example"], ["curl", "-ubob:***", "https://x.example"]),
    # ... and what stays
    (["mkdir", "-pv", "/srv/data"], ["mkdir", "-pv", "/srv/data"]),
    (["mkdir", "-p", "/srv/data"], ["mkdir", "-p", "/srv/data"]),
    (["ssh", "-p", "2222", "backup@nas"], ["ssh", "-p", "2222", "backup@nas"]),
    (["docker", "run", "-p", "8080:80", "nginx"], ["docker", "run", "-p", "8080:80", "nginx"]),
    (["sort", "-k", "2", "data.txt"], ["sort", "-k", "2", "data.txt"]),
    (["ldapsearch", "-D", "cn=admin", "-w", "Hunter22"], ["ldapsearch", "-D", "cn=admin", "-w", "***"]),
    (["openssl", "enc", "-k", "Hunter22"], ["openssl", "enc", "-k", "***"]),
    (["grep", "-w", "error", "/var/log/syslog"], ["grep", "-w", "error", "/var/log/syslog"]),
    (["app", "-u", "alice"], ["app", "-u", "alice"]),
    (["app", "-p", "-v"], ["app", "-p", "-v"]),
    (["curl", "https://example.com/a?q=%20x"], ["curl", "https://example.com/a?q=%20x"]),
]


@pytest.mark.parametrize("rule,argv,expected", RULE_ROWS, ids=[f"{r[0]}-{i}" for i, r in enumerate(RULE_ROWS)])
def test_rule_rows(rule, argv, expected):
    assert redact_args(argv) == expected
    line = redact_cmdline(argv, 10_000)
    for a, e in zip(argv, expected):
        if a != e:
            assert "Hunter22" not in line and a not in line.split(" ")


def test_every_rule_has_rows():
    from exporter.redact import RULES
    assert {name for name, _, _ in RULES} == {r[0] for r in RULE_ROWS}


@pytest.mark.parametrize("argv,expected", FLAG_ROWS, ids=[" ".join(r[0])[:40] for r in FLAG_ROWS])
def test_short_flag_rows(argv, expected):
    assert redact_args(argv) == expected
