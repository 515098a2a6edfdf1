"""The `wazza-hooks` command: the tools around the services, one subpackage per family.

`send` plays Wazza (send-test, simulate, register, verify); `ops` works on a running system
(jobs, replay, dlq, migrate); `dev` runs the system locally (dev stack, local brokers, topics).
Tools may import anything of ours; nothing of ours imports them (`make lint` checks it).
"""
