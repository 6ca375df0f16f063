// Found only when libtorch is not set up: .cargo/config.toml puts this folder on the C++ include path
// after libtorch's own, so torch-sys's compile stops here with one line saying what to run.
#error "armt: libtorch is not set up: run scripts/setup, then cargo works as it is"
#include <armt: libtorch is not set up, run scripts/setup>
