"""Real servers for integration tests: each module starts one (redis-server, sshd, dockerd, an S3
server) on loopback, installing it first when it is missing, and stops it by PID afterwards.

Under ``CI=true`` a server that cannot start fails the test; elsewhere the test is skipped with the
reason. Plugin authors can use the same helpers in their own suites.
"""
