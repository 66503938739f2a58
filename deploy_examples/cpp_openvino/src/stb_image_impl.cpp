// The stb_image implementation, compiled once (image.hpp only declares it).
#ifdef EDGEDISTILL_HAVE_STB
#define STB_IMAGE_IMPLEMENTATION
#define STBI_FAILURE_USERMSG
#include <stb_image.h>
#endif
