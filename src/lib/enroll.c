/* p11escrow — enroll (being implemented). */
#include <p11escrow/enroll.h>
