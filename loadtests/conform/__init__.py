"""Conformance to the public specification: the Open Responses OpenAPI document as data and validation against
it (spec), how an endpoint is talked to (wire), the cases (cases) and running them (run). The command is
:mod:`loadtests.commands.conform`."""
