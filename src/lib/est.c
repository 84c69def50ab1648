/* p11escrow — est (being implemented). */
#include <p11escrow/est.h>
