module keda-tenancy/bench/loadgen

go 1.22
